from services.netagent.app import main

main()
